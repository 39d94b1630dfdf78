# Training: one rule per stage (train_221, train_222, train_223), one job per fold (one GPU each on cuda). Train as
# you infer adds the chain between the stages: 221's cross-validation predictions gathered (gather_cv_221) -> 222's
# ROIs (derive_from_predictions, plan_222) -> 222's gathered (gather_cv_222) -> 223's mask channel (derive_masks,
# plan_223). A training continues its own checkpoint when rerun (kits_plugins.workflow.resume).

for stage in layout.STAGES:

    rule:
        name:
            f"train_{stage}"
        input:
            plans=layout.plans_json(stage, PLANS),
        output:
            layout.trained(stage, "{fold}"),
        threads: threads_of("train")
        resources:
            **resources_of("train", gpu=True),
        log:
            layout.log(f"train_{stage}_{{fold}}"),
        benchmark:
            layout.benchmark(f"train_{stage}_{{fold}}")
        params:
            job=JOB,
            fold_dir=layout.fold_folder(C, stage, "{fold}"),
            env=" ".join(f"--env {k}={v}" for k, v in steps.train_environment(C, stage).items()),
            cmd=cmd(steps.train(C, stage, "{fold}")),
        shell:
            "({params.job} train --fold-dir {params.fold_dir} --plans {input.plans} --record {output} {params.env}"
            " -- {params.cmd}) 2>&1 | tee {log}"


if C["train_as_you_infer"]:
    for stage in layout.CROSSVAL_STAGES:

        rule:
            name:
                f"gather_cv_{stage}"
            input:
                [layout.trained(stage, f) for f in FOLDS],
            output:
                directory(layout.crossval_dir(stage)),
            localrule: True
            threads: 1
            resources:
                **resources_of("prepare"),
            log:
                layout.log(f"gather_cv_{stage}"),
            benchmark:
                layout.benchmark(f"gather_cv_{stage}")
            params:
                job=JOB,
                splits=layout.splits_json(stage),
                folds=" ".join(layout.fold_folder(C, stage, f) for f in FOLDS),
            shell:
                "(run {params.job} gather --splits {params.splits} --out {output} {params.folds}) 2>&1 | tee {log}"

    rule derive_from_predictions:
        input:
            layout.crossval_dir("221"),
        output:
            layout.raw_dataset_json("222"),
        threads: threads_of("prepare")
        resources:
            **resources_of("prepare"),
        log:
            layout.log("derive_from_predictions"),
        benchmark:
            layout.benchmark("derive_from_predictions")
        params:
            cmd=cmd(steps.derive_from_predictions(C)),
        shell:
            "(run {params.cmd} -np {threads}) 2>&1 | tee {log}"

    rule plan_222:
        input:
            layout.raw_dataset_json("222"),
        output:
            layout.plans_json("222", PLANS),
        threads: threads_of("plan")
        resources:
            **resources_of("plan"),
        log:
            layout.log("plan_222"),
        benchmark:
            layout.benchmark("plan_222")
        params:
            cmd=cmd(steps.plan(C, ("222",))),
        shell:
            "(run {params.cmd} -np {threads}) 2>&1 | tee {log}"

    rule derive_masks:
        input:
            layout.crossval_dir("222"),
        output:
            layout.raw_dataset_json("223"),
        threads: threads_of("prepare")
        resources:
            **resources_of("prepare"),
        log:
            layout.log("derive_masks"),
        benchmark:
            layout.benchmark("derive_masks")
        params:
            cmd=cmd(steps.derive_masks(C)),
        shell:
            "(run {params.cmd} -np {threads}) 2>&1 | tee {log}"

    rule plan_223:
        input:
            layout.raw_dataset_json("223"),
        output:
            layout.plans_json("223", PLANS),
        threads: threads_of("plan")
        resources:
            **resources_of("plan"),
        log:
            layout.log("plan_223"),
        benchmark:
            layout.benchmark("plan_223")
        params:
            cmd=cmd(steps.plan(C, ("223",))),
        shell:
            "(run {params.cmd} -np {threads}) 2>&1 | tee {log}"
