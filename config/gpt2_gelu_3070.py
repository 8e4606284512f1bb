# The GPT-2 124M baseline (GELU, LayerNorm, learned positions) with WiggleGPT's exact budget,
# for a fair comparison; sized for an 8 GB GPU (RTX 3070).
#   python train_bio.py config/gpt2_gelu_3070.py
# tokens per iteration: 32,768 = batch_size 2 x gradient_accumulation_steps 16 x block_size 1,024
# memory: ~6 GB of the 8 GB at bf16 (GELU keeps as much for backward as the oscillating neuron).
# Everything not set here, data, schedule and batch included, comes from config/gpt2_bio_3070.py:
# only these three switches differ.
from config.gpt2_bio_3070 import *  # noqa: F401,F403

use_bio_mlp = False  # GELU
use_rmsnorm = False  # LayerNorm
use_rope = False  # learned position table (wpe), as GPT-2

out_dir = "out-gelu-124m"
wandb_run_name = "gelu-124m-3070"
