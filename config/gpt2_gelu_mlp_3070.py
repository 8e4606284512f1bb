# The one-switch baseline for the 124M question "do oscillating neurons help?": exactly
# config/gpt2_bio_3070.py with the GELU MLP (use_bio_mlp=False). RMSNorm, RoPE, data, schedule,
# batch and seed stay the same, so the activation is the only difference (config/gpt2_gelu_3070.py
# is GPT-2 itself, which also changes the norm and the position encoding).
#   python train_bio.py config/gpt2_bio_3070.py
#   python train_bio.py config/gpt2_gelu_mlp_3070.py
# or both at once, with the report:
#   python compare_bio.py --run config/gpt2_bio_3070.py --ablate=use_bio_mlp
# Cost, from the original WiggleGPT's log of its 124M run (eager fp16, no torch.compile): ~2.05 s
# per 32,768-token iteration on an RTX 3070 (~16,000 tokens/s), ~1.72 s on an RTX 5060 Ti, so the
# full 600,000 iterations (19.7B tokens) take ~14 GPU-days on a 3070 per run, ~28 for the pair;
# --max_iters=50000 (1.6B tokens, with --lr_decay_iters=50000) ~1.2 GPU-days per run.
# tokens per iteration: 32,768 = batch_size 2 x gradient_accumulation_steps 16 x block_size 1,024
# memory: ~6 GB of the 8 GB at bf16, as config/gpt2_bio_3070.py (GELU keeps as much for backward).
from config.gpt2_bio_3070 import *  # noqa: F401,F403

use_bio_mlp = False  # GELU: the one switch

out_dir = "out-gelu-mlp-124m"
wandb_run_name = "gelu-mlp-124m-3070"
