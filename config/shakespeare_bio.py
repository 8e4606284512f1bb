# WiggleGPT demo: a small oscillating-neuron model on the vendored Shakespeare, a few minutes
# on a 2-core laptop CPU (the data is built on first use, offline, in seconds).
#   python train_bio.py config/shakespeare_bio.py
# Its twin config/shakespeare_gelu.py differs only in the MLP/norm/position switches, so
# the two val losses compare like for like (same seed, data, batches and token budget).
# tokens per iteration: 1,024 = batch_size 8 x gradient_accumulation_steps 1 x block_size 128
# memory: sized for any laptop (~0.5 GB of RAM; parameters are mostly the 50,304 x 128 embedding)

out_dir = "out-shakespeare-bio"
dataset = "shakespeare"
device = "auto"
dtype = "auto"
compile = False  # a CPU demo: eager (compile="auto" would pick eager here too)
peak_flops = 2e11  # rough fp32 peak of 2 CPU cores (2 x ~3 GHz x 32 FLOP/cycle with AVX2 FMA), so MFU means something

eval_interval = 50  # 6 evals over the run
eval_iters = 8
log_interval = 10

n_layer = 4
n_head = 4
n_embd = 128
block_size = 128
dropout = 0.0
use_bio_mlp = True
use_rmsnorm = True
use_rope = True

batch_size = 8
gradient_accumulation_steps = 1
max_iters = 250  # 256,000 tokens, about a fifth of an epoch of the 1.4M training tokens

learning_rate = 2e-3  # small models take a high rate
min_lr = 2e-4
warmup_iters = 25
lr_decay_iters = 250
betas = (0.9, 0.99)
seed = 1337
