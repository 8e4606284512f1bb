# The published WiggleGPT v2 run: 45.31M parameters, val loss 3.587 after 200k iterations,
# ~16 % of the sparse gate's units firing (the original logged this share as "sparsity").
#   python train_bio.py config/bio_45m_sparse_3070.py
# Its architecture (WiggleGPT-V2-OLD): LayerNorm, a learned position table, no biases, and in
# each MLP c_fc -> oscillating neurons -> the event-layer sparse gate (two full 1,536 x 1,536
# matrices and a second set of oscillating neurons) -> c_proj. 45,309,312 parameters counted
# without the position table, as the original did; 19.3M of them the tied 50,304 x 384 embedding.
# tokens per iteration: 32,768 = batch_size 2 x gradient_accumulation_steps 16 x block_size 1,024
# memory: fits the 8 GB of an RTX 3070 at fp16 (the original's setting; the 3070 has bf16 too)
# The lighter gate of the same shape: config/bio_sparse_lightweight_3070.py.
# Everything not set here comes from config/gpt2_bio_3070.py.
from config.gpt2_bio_3070 import *  # noqa: F401,F403

out_dir = "out-bio-45m-sparse"
wandb_run_name = "bio-45m-sparse-3070"
eval_interval = 2000
eval_iters = 50
log_interval = 10

n_layer = 4
n_head = 6
n_embd = 384
block_size = 1024
bias = False
use_bio_mlp = True
use_rmsnorm = False  # v2 predates RMSNorm and RoPE
use_rope = False
use_sparse_gate = True
sparse_gate_kind = "event_layer"
bio_threshold = 0.25

batch_size = 2
gradient_accumulation_steps = 16
max_iters = 200000  # 6.6B tokens
lr_decay_iters = 200000
learning_rate = 6e-4
min_lr = 6e-5
warmup_iters = 2000
dtype = "float16"  # as the original ran it (with loss scaling)
