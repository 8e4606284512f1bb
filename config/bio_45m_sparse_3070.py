# A small WiggleGPT with the sparse spike gate (4 layers, 6 heads, 384 wide: 26,428,800
# parameters, 19.3M of them the tied 50,304 x 384 embedding) on OpenWebText, for an 8 GB GPU.
# The log lines and eval lines report the share of silent MLP units ("sparsity").
#   python train_bio.py config/bio_45m_sparse_3070.py
# tokens per iteration: 32,768 = batch_size 8 x gradient_accumulation_steps 4 x block_size 1,024
# memory: ~4 GB of the 8 GB at bf16; --gradient_checkpointing=True if other programs hold the GPU
# Why "45M": the original's sparse layer added two 1,536 x 1,536 matrices per layer (18.9M in
# all); this gate is two vectors per layer, so the same shape has 26.4M parameters.
# Everything not set here comes from config/gpt2_bio_3070.py.
from config.gpt2_bio_3070 import *  # noqa: F401,F403

out_dir = "out-bio-sparse"
wandb_run_name = "bio-sparse-3070"

n_layer = 4
n_head = 6
n_embd = 384
use_sparse_gate = True
bio_threshold = 0.25  # where a unit "fires": the published 45M model sat at ~16 % silent units

batch_size = 8
gradient_accumulation_steps = 4
max_iters = 200000  # 6.6B tokens
lr_decay_iters = 200000
learning_rate = 1e-3  # small models train well at a higher rate
min_lr = 1e-4
