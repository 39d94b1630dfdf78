# The test cases: the cascade in N shards (one GPU each on cuda), merged, evaluated, reported.


rule predict:
    input:
        models=[layout.trained(s, f) for s in layout.STAGES for f in FOLDS],
        cases=C["test_dir"],
    output:
        directory(layout.prediction_part("{part}", N_PARTS)),
    threads: threads_of("predict")
    resources:
        **resources_of("predict", gpu=True),
    log:
        layout.log(f"predict_{{part}}_of_{N_PARTS}"),
    benchmark:
        layout.benchmark(f"predict_{{part}}_of_{N_PARTS}")
    params:
        cmd=lambda wc: cmd(steps.predict(C, wc.part)),
    shell:
        "(run {params.cmd}) 2>&1 | tee {log}"


rule merge_predictions:
    input:
        [layout.prediction_part(k, N_PARTS) for k in range(N_PARTS)],
    output:
        directory(layout.PREDICTIONS),
    localrule: True
    threads: 1
    resources:
        **resources_of("prepare"),
    log:
        layout.log("merge_predictions"),
    benchmark:
        layout.benchmark("merge_predictions")
    params:
        job=JOB,
        test_dir=C["test_dir"],
    shell:
        "(run {params.job} merge --test-dir {params.test_dir} --out {output} {input}) 2>&1 | tee {log}"


rule evaluate:
    input:
        predictions=layout.PREDICTIONS,
        cases=C["test_dir"],
    output:
        layout.EVALUATION_CSV,
        layout.EVALUATION_JSON,
    threads: threads_of("evaluate")
    resources:
        **resources_of("evaluate"),
    log:
        layout.log("evaluate"),
    benchmark:
        layout.benchmark("evaluate")
    params:
        cmd=cmd(steps.evaluate(C)),
    shell:
        "(run {params.cmd} -np {threads}) 2>&1 | tee {log}"


# Every job is upstream of evaluate, so its benchmark file is written before the report reads it.
rule report:
    input:
        layout.EVALUATION_JSON,
        layout.PREDICTIONS,
    output:
        layout.SUMMARY,
        layout.REPORT,
        directory(layout.FIGURES),
    threads: 1
    resources:
        **resources_of("evaluate"),
    log:
        layout.log("report"),
    params:
        job=JOB,
        config=shlex.quote(json.dumps(C)),
    shell:
        "(run {params.job} report --config-json {params.config}) 2>&1 | tee {log}"
