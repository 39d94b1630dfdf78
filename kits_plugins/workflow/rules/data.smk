# Data: synthetic cases (optional), KiTS layout -> Dataset220, stage datasets 221/222/223, plans.
# With train_as_you_infer only 221 comes from ground truth here; 222 and 223 follow in train.smk.

GT_STAGES = layout.ground_truth_stages(C)

if C["synthetic"] is not None:

    rule synth_train:
        output:
            directory(C["kits_dir"]),
        threads: 1
        resources:
            **resources_of("prepare"),
        log:
            layout.log("synth_train"),
        benchmark:
            layout.benchmark("synth_train")
        params:
            cmd=cmd(steps.synth(C, test=False)),
        shell:
            "(run {params.cmd}) 2>&1 | tee {log}"

    rule synth_test:
        output:
            directory(C["test_dir"]),
        threads: 1
        resources:
            **resources_of("prepare"),
        log:
            layout.log("synth_test"),
        benchmark:
            layout.benchmark("synth_test")
        params:
            cmd=cmd(steps.synth(C, test=True)),
        shell:
            "(run {params.cmd}) 2>&1 | tee {log}"


rule convert:
    input:
        C["kits_dir"],
    output:
        layout.raw_dataset_json("220"),
    threads: threads_of("prepare")
    resources:
        **resources_of("prepare"),
    log:
        layout.log("convert"),
    benchmark:
        layout.benchmark("convert")
    params:
        cmd=cmd(steps.convert(C)),
    shell:
        "(run {params.cmd} -np {threads}) 2>&1 | tee {log}"


rule derive_stages:
    input:
        layout.raw_dataset_json("220"),
    output:
        [layout.raw_dataset_json(s) for s in GT_STAGES],
    threads: threads_of("prepare")
    resources:
        **resources_of("prepare"),
    log:
        layout.log("derive_stages"),
    benchmark:
        layout.benchmark("derive_stages")
    params:
        cmd=cmd(steps.derive_ground_truth(C)),
    shell:
        "(run {params.cmd} -np {threads}) 2>&1 | tee {log}"


rule plan:
    input:
        [layout.raw_dataset_json(s) for s in GT_STAGES],
    output:
        [layout.plans_json(s, PLANS) for s in GT_STAGES],
    threads: threads_of("plan")
    resources:
        **resources_of("plan"),
    log:
        layout.log("plan"),
    benchmark:
        layout.benchmark("plan")
    params:
        cmd=cmd(steps.plan(C, GT_STAGES)),
    shell:
        "(run {params.cmd} -np {threads}) 2>&1 | tee {log}"
