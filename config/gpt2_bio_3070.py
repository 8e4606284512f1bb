# WiggleGPT 124M (123,697,920 parameters) on OpenWebText, sized for an 8 GB GPU (RTX 3070).
#   python train_bio.py config/gpt2_bio_3070.py
#   torchrun --standalone --nproc_per_node=2 train_bio.py config/gpt2_bio_3070.py   # 2 GPUs
# tokens per iteration: 32,768 = batch_size 2 x gradient_accumulation_steps 16 x block_size 1,024
# memory: ~6 GB of the 8 GB at bf16 (fp32 weights, grads and AdamW state ~2 GB, the rest
# activations). Out of memory? --gradient_checkpointing=True recomputes each block in backward
# (about 30% slower, a fraction of the activation memory), or lower batch_size and raise
# gradient_accumulation_steps to keep the 32,768 tokens per iteration.
# Data: python prepare_openwebtext_streaming.py first; the bins go to data/openwebtext.

out_dir = "out-bio-124m"
dataset = "openwebtext"
eval_interval = 2000
eval_iters = 200
log_interval = 10
always_save_checkpoint = True

# the published WiggleGPT 124M: oscillating MLP, RMSNorm, RoPE, no biases
n_layer = 12
n_head = 12
n_embd = 768
block_size = 1024
vocab_size = 50304
dropout = 0.0
bias = False
use_bio_mlp = True
use_rmsnorm = True
use_rope = True
gradient_checkpointing = False  # True if 8 GB is not enough (see above)

batch_size = 2
gradient_accumulation_steps = 16
tokens_per_iter = 32768  # --batch_size=auto keeps this, choosing batch and accumulation for the card
max_iters = 600000  # 19.7B tokens

# optimizer and schedule: train_bio.py's defaults, the published recipe (AdamW, cosine from
# learning_rate 6e-4 to min_lr 6e-5 over lr_decay_iters 600,000 after warmup_iters 2,000,
# weight_decay 0.1, betas (0.9, 0.95), grad_clip 1.0)

device = "auto"
dtype = "auto"  # bf16 on Ampere and newer, else fp16 with loss scaling
compile = "auto"  # compiled on CUDA where Triton works (slow first iterations), eager elsewhere
# MFU is measured against the peak of the GPU in use (PEAK_FLOPS in wigglegpt/gpu.py); peak_flops = ... overrides it

wandb_log = False
wandb_project = "wigglegpt"
wandb_run_name = "bio-124m-3070"
