"""lm-evaluation-harness (PyPI lm_eval) against a running `dmc serve`, as a user runs it: `local-completions` with
the server's own tokenizer (tokenizer_backend=remote: /tokenizer_info, /tokenize, /detokenize), on two tasks defined
here from local JSONL files (no hub download): a multiple-choice task (loglikelihood requests: echo + logprobs) and
a generate-until task (greedy completions with stop strings).

  lm_eval_client.py BASE_URL MODEL WORKDIR     prints JSON: {"mc": {"acc", "samples": [...]}, "gen": {...}}

Each sample carries what lm_eval sent and got back (context, continuation or stop list, its loglikelihoods or the
generated text), so that the C++ test can recompute every number with dmc itself.
"""
import json
import os
import sys

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

MC = [
    {"question": "The cat sat on the", "choices": ["mat", "moon", "river", "table top"], "answer": 0},
    {"question": "One, two, three,", "choices": ["four", "seven", "blue"], "answer": 0},
    {"question": "The sky is", "choices": ["green", "blue", "loud", "made of cheese"], "answer": 1},
    {"question": "Water boils at one hundred degrees", "choices": ["Celsius", "Kelvin", "of fun"], "answer": 0},
    {"question": "A dog says", "choices": ["woof", "meow", "moo"], "answer": 0},
    {"question": "The opposite of hot is", "choices": ["cold", "warm", "spicy", "red"], "answer": 0},
]
GEN = [
    {"question": "Once upon a time", "answer": "there"},
    {"question": "The quick brown fox", "answer": "jumps"},
    {"question": "In the beginning", "answer": "God"},
    {"question": "It was the best of times,", "answer": "it"},
]


def write_tasks(work):
    os.makedirs(work, exist_ok=True)
    for name, rows in (("mc", MC), ("gen", GEN)):
        with open(os.path.join(work, name + ".jsonl"), "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    # a task over its local JSONL file (the `json` loader of HF datasets: no hub download)
    def task(name, rows, body):
        with open(os.path.join(work, name + ".yaml"), "w") as f:
            f.write(f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
                    f"    test: {os.path.join(work, rows)}\ntest_split: test\n" + body)

    task("dmc_mc", "mc.jsonl", """output_type: multiple_choice
doc_to_text: "{{question}}"
doc_to_choice: "{{choices}}"
doc_to_target: "{{answer}}"
metric_list:
  - metric: acc
""")
    task("dmc_gen", "gen.jsonl", """output_type: generate_until
doc_to_text: "{{question}}"
doc_to_target: "{{answer}}"
generation_kwargs:
  until: ["."]
  max_gen_toks: 6
  do_sample: false
  temperature: 0
metric_list:
  - metric: exact_match
""")


def main():
    base, model, work = sys.argv[1], sys.argv[2], sys.argv[3]
    os.environ["HF_DATASETS_CACHE"] = os.path.join(work, "hf-datasets")  # nothing written outside WORKDIR
    write_tasks(work)
    import lm_eval
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=work)
    out = lm_eval.simple_evaluate(
        model="local-completions",
        model_args=f"model={model},base_url={base}/v1/completions,tokenizer_backend=remote,num_concurrent=2,"
                   f"max_retries=1,tokenized_requests=True,max_length=256",
        tasks=["dmc_mc", "dmc_gen"],
        task_manager=tm,
        log_samples=True,
        batch_size=1,
    )
    res = {}
    mc = out["results"]["dmc_mc"]
    res["mc"] = {"acc": mc["acc,none"], "samples": []}
    for s in sorted(out["samples"]["dmc_mc"], key=lambda s: s["doc_id"]):
        res["mc"]["samples"].append({
            "doc_id": s["doc_id"],
            "gold": s["target"],
            "requests": [{"context": a[0], "continuation": a[1]} for a in s["arguments"]],
            "loglikelihoods": [r[0][0] for r in s["resps"]],
        })
    gen = out["results"]["dmc_gen"]
    res["gen"] = {"exact_match": gen["exact_match,none"], "samples": []}
    for s in sorted(out["samples"]["dmc_gen"], key=lambda s: s["doc_id"]):
        res["gen"]["samples"].append({
            "doc_id": s["doc_id"],
            "context": s["arguments"][0][0],
            "until": s["arguments"][0][1]["until"],
            "target": s["target"],
            "response": s["resps"][0][0],
            "filtered": s["filtered_resps"][0],
        })
    print(json.dumps(res))


if __name__ == "__main__":
    main()
