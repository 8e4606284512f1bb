# A small WiggleGPT with the lightweight sparse gate (a weight and a bias per hidden unit) on
# OpenWebText, for an 8 GB GPU: 4 layers, 6 heads, 384 wide, 26,428,800 parameters, 19.3M of
# them the tied 50,304 x 384 embedding. The log and eval lines report the share of MLP units
# that fire ("firing"), what the original logged as "sparsity".
#   python train_bio.py config/bio_sparse_lightweight_3070.py
# tokens per iteration: 32,768 = batch_size 8 x gradient_accumulation_steps 4 x block_size 1,024
# memory: ~4 GB of the 8 GB at bf16; --gradient_checkpointing=True if other programs hold the GPU
# The published v2 model of this shape had the event-layer gate (two 1,536 x 1,536 matrices per
# layer, 18.9M in all): config/bio_45m_sparse_3070.py reproduces that run.
# Everything not set here comes from config/gpt2_bio_3070.py.
from config.gpt2_bio_3070 import *  # noqa: F401,F403

out_dir = "out-bio-sparse-lightweight"
wandb_run_name = "bio-sparse-lightweight-3070"

n_layer = 4
n_head = 6
n_embd = 384
use_sparse_gate = True
sparse_gate_kind = "lightweight"
bio_threshold = 0.25  # a unit fires when h * gate_weight + gate_bias is above this

batch_size = 8
gradient_accumulation_steps = 4
max_iters = 200000  # 6.6B tokens
lr_decay_iters = 200000
learning_rate = 1e-3  # small models train well at a higher rate
min_lr = 1e-4
