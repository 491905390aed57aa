"""lm-evaluation-harness, unchanged (its own CLI in a subprocess), against the running service on local task
files: `local-completions` with its defaults (tokenized requests, the tokenizer found remotely through
/tokenizer_info and /tokenize), several prompts per request and requests in flight at once; its per-choice
log-likelihoods equal transformers' own. `local-chat-completions` runs a generation task."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.conftest import MODEL

pytest.importorskip("lm_eval", reason="lm-evaluation-harness is a dev dependency (pip install lm-eval)")

MC_DOCS = [
    {"question": "What is the capital of France?", "choices": ["Paris", "London", "Berlin", "Madrid"], "answer": 0},
    {"question": "How many legs does a spider have?", "choices": ["six", "eight", "four", "ten"], "answer": 1},
    {"question": "Which planet is closest to the Sun?", "choices": ["Venus", "Earth", "Mercury"], "answer": 2},
    {"question": "What colour is the sky on a clear day?", "choices": ["green", "blue", "red"], "answer": 1},
    {"question": "Water freezes at how many degrees Celsius?", "choices": ["0", "100", "50"], "answer": 0},
]
GEN_DOCS = [
    {"question": "What is the capital of France? Answer in one word.", "answer": "Paris"},
    {"question": "What is 2 + 2? Answer with a number.", "answer": "4"},
]


def _task(folder: Path, name: str, docs: list[dict[str, Any]], body: str) -> None:
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n{body}"
    )


@pytest.fixture(scope="module")
def tasks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("lm_eval_tasks")
    _task(
        folder,
        "logprobe_mc",
        MC_DOCS,
        'output_type: multiple_choice\ndoc_to_text: "Question: {{question}}\\nAnswer:"\n'
        "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{answer}}'\nmetric_list:\n  - metric: acc\n",
    )
    _task(
        folder,
        "logprobe_gen",
        GEN_DOCS,
        "output_type: generate_until\ndoc_to_text: '{{question}}'\ndoc_to_target: '{{answer}}'\n"
        'generation_kwargs:\n  until: ["\\n"]\n  max_gen_toks: 12\n  do_sample: false\n'
        "metric_list:\n  - metric: exact_match\n    ignore_case: true\n",
    )
    return folder


def _lm_eval(service: str, tasks: Path, out: Path, model: str, args: str, *extra: str) -> tuple[list[Any], str]:
    """Run lm-eval's CLI; its logged samples and its stderr."""
    env = {**os.environ, "OPENAI_API_KEY": "key-alpha", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [
        sys.executable,
        "-m",
        "lm_eval",
        "--model",
        model,
        "--model_args",
        f"model={MODEL},auth_token=key-alpha,max_retries=1,{args}",
        "--include_path",
        str(tasks),
        "--log_samples",
        "--output_path",
        str(out),
        *extra,
    ]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-4000:]
    samples = sorted(out.rglob("samples_*.jsonl"))
    assert samples, run.stderr[-2000:]
    return [json.loads(line) for line in samples[-1].read_text().splitlines()], run.stderr


def _reference_loglikelihood(hf: tuple[Any, Any], context: str, continuation: str) -> float:
    """transformers' log-likelihood of the continuation, tokenized as lm-eval tokenizes a pair."""
    model, tokenizer = hf
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer(context + continuation, add_special_tokens=False).input_ids
    n_context = len(tokenizer(context, add_special_tokens=False).input_ids)
    with torch.inference_mode():
        logprobs = torch.log_softmax(model(input_ids=torch.tensor([whole])).logits[0].double(), -1)
    return float(sum(logprobs[t - 1, whole[t]] for t in range(n_context, len(whole))))


def test_local_completions_log_likelihoods_equal_transformers(
    service: str, tasks: Path, tmp_path: Path, hf_smollm2: tuple[Any, Any]
) -> None:
    samples, stderr = _lm_eval(
        service,
        tasks,
        tmp_path,
        "local-completions",
        f"base_url={service}/v1/completions,num_concurrent=2",
        "--tasks",
        "logprobe_mc",
        "--batch_size",
        "4",
    )
    assert "remote tokenizer" in stderr.lower()  # found through /tokenizer_info and /tokenize
    assert len(samples) == len(MC_DOCS)
    checked = 0
    for sample in samples:
        pairs = [(a["arg_0"], a["arg_1"]) for a in sample["arguments"].values()]
        assert pairs[0][0].endswith("?\nAnswer:") and pairs[0][1] == " " + sample["doc"]["choices"][0]
        for (context, continuation), resp in zip(pairs, sample["resps"], strict=True):
            reported = float(resp[0][0])
            assert reported == pytest.approx(_reference_loglikelihood(hf_smollm2, context, continuation), abs=1e-3)
            checked += 1
    assert checked == sum(len(d["choices"]) for d in MC_DOCS)
    accuracy = np.mean([s["acc"] for s in samples])
    assert accuracy >= 0.6  # a 135M instruct model knows these


def test_local_chat_completions_generates(service: str, tasks: Path, tmp_path: Path) -> None:
    from openai import OpenAI

    samples, _ = _lm_eval(
        service,
        tasks,
        tmp_path,
        "local-chat-completions",
        f"base_url={service}/v1/chat/completions",
        "--tasks",
        "logprobe_gen",
        "--apply_chat_template",
    )
    assert len(samples) == len(GEN_DOCS)
    with OpenAI(base_url=f"{service}/v1", api_key="key-alpha", max_retries=0, timeout=300) as client:
        for sample in samples:
            answer = client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": sample["doc"]["question"]}],
                max_tokens=12,
                temperature=0,
                stop=["\n"],
                seed=1234,
            )
            assert sample["resps"][0][0] == answer.choices[0].message.content  # the same answer as the service's
    assert "Paris" in samples[0]["resps"][0][0]
