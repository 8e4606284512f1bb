"""
Any lm-evaluation-harness task on any checkpoint: the harness model 'wigglegpt'.

    python lm_eval_bio.py --model wigglegpt --model_args ckpt=out/ckpt.pt --tasks hellaswag,arc_easy,piqa
    python lm_eval_bio.py --model wigglegpt --model_args init_from=gpt2,batch_size=16 --tasks lambada_openai
    python lm_eval_bio.py --model wigglegpt --model_args ckpt=ckpt.pt --tasks mytask --include_path my_tasks/

Registers 'wigglegpt', then runs the harness's own command line with the same arguments (the
plain `lm_eval` command cannot find the model). From Python:
lm_eval.simple_evaluate(model=lm_eval_bio.make_lm(ckpt="ckpt.pt"), tasks=["hellaswag"]).
The model_args and how each kind of request is computed: README.md, "Evaluation".
"""

import functools
import sys

import torch
import torch.nn.functional as F

from wigglegpt.common import UserError, autocast_for, pick_device, pick_dtype, run_main

MODEL_NAME = "wigglegpt"
MODEL_ARGS = ("ckpt", "init_from", "revision", "device", "dtype", "batch_size", "max_batch_size")


def _import_lm_eval():
    try:
        import lm_eval.api.model
        import lm_eval.api.registry
        import lm_eval.models  # noqa: F401  (the harness's own models: the registry fills itself only while empty)
        import lm_eval.utils
    except ImportError:
        raise UserError("lm-evaluation-harness is not installed: pip install -r requirements-optional.txt "
                        "(or pip install lm-eval)") from None
    return lm_eval


def split_trailing_space(context, continuation):
    """Move the context's trailing whitespace to the continuation: BPE merges a space with the
    word after it, so " word" must be tokenized together."""
    n = len(context) - len(context.rstrip())
    return (context[:-n], context[-n:] + continuation) if n else (context, continuation)


def rolling_windows(ids, block_size, prefix):
    """[(input ids, target ids)] that predict each of ids exactly once, after `prefix`
    (<|endoftext|>): chunks of block_size targets, each with the longest context that fits."""
    full = [prefix] + list(ids)
    pairs = []
    for a in range(1, len(full), block_size):  # targets full[a:b]
        b = min(a + block_size, len(full))
        start = max(0, b - 1 - block_size)
        pairs.append((full[start:b - 1], full[a:b]))
    return pairs


@functools.lru_cache(maxsize=1)
def model_class():
    """The harness LM subclass, registered as 'wigglegpt' (built on first use: lm_eval is heavy)."""
    lm_eval = _import_lm_eval()
    from tqdm import tqdm

    from wigglegpt import tokenizer
    from wigglegpt.engine import generate, stream_text
    from wigglegpt.loader import load_for_inference, model_source

    @lm_eval.api.registry.register_model(MODEL_NAME)
    class WiggleGPTLM(lm_eval.api.model.LM):
        @classmethod
        def create_from_arg_string(cls, arg_string, additional_config=None):
            return cls.create_from_arg_obj(lm_eval.utils.simple_parse_args_string(arg_string), additional_config)

        @classmethod
        def create_from_arg_obj(cls, arg_dict, additional_config=None):
            """--model_args, then what the harness adds (--device, --batch_size, ...) for what they
            leave out: device=... in --model_args wins over --device and its default cuda:0, as
            the harness's own models take it; an argument it cannot use is one line."""
            args = dict(arg_dict)
            for key, value in (additional_config or {}).items():
                if value is not None and key not in args:
                    args[key] = value
            unknown = sorted(set(args) - set(MODEL_ARGS))
            if unknown:
                raise UserError(f"--model_args {unknown[0]}=...: the wigglegpt model takes {', '.join(MODEL_ARGS)}")
            return cls(**args)

        def __init__(self, ckpt="", init_from="", revision="", device=None, dtype="auto", batch_size=8,
                     max_batch_size=None):
            super().__init__()
            if device and device.startswith("cuda") and not torch.cuda.is_available():
                # lm_eval's command line asks for cuda:0 unless told otherwise
                print(f"note: device {device} asked for but there is no CUDA GPU; using the best device here",
                      file=sys.stderr)
                device = None
            self._device = pick_device(device or "auto")
            self.autocast = autocast_for(self._device, pick_dtype(dtype, self._device))
            try:
                self.batch_size = int(batch_size)
            except (TypeError, ValueError):
                raise UserError(f"batch_size={batch_size!r}: give a whole number of sequences") from None
            if self.batch_size <= 0:
                raise UserError(f"batch_size must be positive, got {self.batch_size}")
            self.model, self.name = load_for_inference(model_source(ckpt, init_from, default=""), device=self._device,
                                                       needs_tokenizer="lm-evaluation-harness", revision=revision)
            self.block_size = self.model.config.block_size

        @property
        def tokenizer_name(self):
            return "gpt2"

        @torch.no_grad()
        def score(self, pairs, disable_tqdm=False, desc="loglikelihood"):
            """[(sum of log p(targets), all targets greedy)] for pairs (input ids, target ids):
            the targets are what the last len(targets) input positions predict. Batched by length
            (longest first), right-padded; padding sits after every scored position."""
            order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i][0]))
            results = [None] * len(pairs)
            for i in tqdm(range(0, len(order), self.batch_size), desc=desc, disable=disable_tqdm or None):
                batch = order[i:i + self.batch_size]
                width = len(pairs[batch[0]][0])
                x = torch.zeros((len(batch), width), dtype=torch.long)
                for row, k in enumerate(batch):
                    x[row, :len(pairs[k][0])] = torch.tensor(pairs[k][0])
                x = x.to(self._device)
                with self.autocast:
                    logits, _ = self.model(x, torch.zeros_like(x))  # targets: logits at every position
                logp = F.log_softmax(logits.float(), dim=-1)
                for row, k in enumerate(batch):
                    inp, targets = pairs[k]
                    at = logp[row, len(inp) - len(targets):len(inp)]  # (n targets, V)
                    want = torch.tensor(targets, device=at.device)
                    total = float(at.gather(1, want[:, None]).sum())
                    results[k] = (total, bool((at.argmax(dim=-1) == want).all()))
            return results

        def loglikelihood(self, requests, disable_tqdm=False):
            pairs = []
            for request in requests:
                context, continuation = split_trailing_space(*request.args)
                if context:  # as the harness's own models: encode the whole, then split off the
                    # context's length, so BPE merges across the join as in running text
                    ctx_ids = tokenizer.encode(context)
                    cont_ids = tokenizer.encode(context + continuation)[len(ctx_ids):]
                else:
                    ctx_ids, cont_ids = [tokenizer.EOT], tokenizer.encode(continuation)
                if not cont_ids:
                    raise UserError(f"empty continuation to score after {context[-40:]!r}")
                whole = (ctx_ids + cont_ids)[-(self.block_size + 1):]  # a long context keeps its end
                pairs.append((whole[:-1], cont_ids[-(len(whole) - 1):]))
            results = self.score(pairs, disable_tqdm)
            for request, result in zip(requests, results):
                self.cache_hook.add_partial("loglikelihood", request.args, result)
            return results

        def loglikelihood_rolling(self, requests, disable_tqdm=False):
            windows, owner = [], []
            for k, request in enumerate(requests):
                for pair in rolling_windows(tokenizer.encode(request.args[0]), self.block_size,
                                            tokenizer.EOT):
                    windows.append(pair)
                    owner.append(k)
            totals = [0.0] * len(requests)
            for k, (logprob, _) in zip(owner, self.score(windows, disable_tqdm, "loglikelihood_rolling")):
                totals[k] += logprob
            for request, total in zip(requests, totals):
                self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
            return totals

        def generate_until(self, requests, disable_tqdm=False):
            outputs = []
            self.model.eval()
            for request in tqdm(requests, desc="generate_until", disable=disable_tqdm or None):
                context, kwargs = request.args
                kwargs = dict(kwargs or {})
                until = kwargs.pop("until", None) or [tokenizer.EOT_TEXT]
                until = [until] if isinstance(until, str) else list(until)
                max_new = int(kwargs.pop("max_gen_toks", 256))
                sample = bool(kwargs.pop("do_sample", False))
                temperature = float(kwargs.pop("temperature", 1.0)) if sample else 0.0
                top_k, top_p = (kwargs.pop("top_k", None), kwargs.pop("top_p", None)) if sample else (None, None)
                ids = tokenizer.encode(context) if context else [tokenizer.EOT]
                tokens = generate(self.model, ids, max_new, temperature=temperature, top_k=top_k, top_p=top_p,
                                  stop_tokens=[tokenizer.EOT],
                                  seed=1234 if temperature > 0 else None, vocab_size=tokenizer.VOCAB_SIZE,
                                  autocast=self.autocast)
                text = "".join(stream_text(tokens, until))
                self.cache_hook.add_partial("generate_until", request.args, text)
                outputs.append(text)
            return outputs

    return WiggleGPTLM


def make_lm(**model_args):
    """A 'wigglegpt' harness model: make_lm(ckpt='ckpt.pt', device='cpu', batch_size=8)."""
    return model_class()(**model_args)


def main(argv=None):
    """Register 'wigglegpt', then run lm_eval's command line on argv."""
    model_class()
    from lm_eval.__main__ import cli_evaluate
    sys.argv = [sys.argv[0]] + list(sys.argv[1:] if argv is None else argv)
    try:
        cli_evaluate()
    except ValueError as e:
        if str(e).startswith("Tasks not found"):  # the harness's own words for a task name it does not know
            raise UserError(f"{e}; `python lm_eval_bio.py ls tasks` lists them "
                            "(your own: --include_path=FOLDER)") from None
        raise


if __name__ == "__main__":
    run_main(main)
