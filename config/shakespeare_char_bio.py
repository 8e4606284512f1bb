# WiggleGPT on nanoGPT's character-level Shakespeare: a model whose parameters are mostly MLP, so
# the oscillating neurons carry most of the weights, in about a minute on a 2-core CPU.
#   python train_bio.py config/shakespeare_char_bio.py
# The data (data/shakespeare_char: train.bin, val.bin, meta.pkl) is built from the vendored corpus
# on first use, offline, in about a second (or: python prepare_shakespeare_char.py); vocab_size is
# taken from meta.pkl (84 characters). Its twin config/shakespeare_char_gelu.py differs only in
# use_bio_mlp (and out_dir), so the two val losses compare like for like.
# parameters: 804,480 (4 x 128 wide), of them 530,432 (65.9 %) in the MLPs (c_fc, c_proj and the
# neurons' omega, phi and baseline); the GELU twin: 798,336, 524,288 (65.7 %) in the MLPs
# measured: 73.7 s for the 400 iterations (75.7 s wall with start-up) on a 2-core CPU with
#   OMP_NUM_THREADS=1 (another process busy on the other core); val loss 1.879 at the end
# tokens per iteration: 1,024 = batch_size 8 x gradient_accumulation_steps 1 x block_size 128
# memory: sized for any laptop (~0.5 GB of RAM)

out_dir = "out-shakespeare-char-bio"
dataset = "shakespeare_char"
compile = False  # a CPU demo: eager
peak_flops = 2e11  # rough fp32 peak of 2 CPU cores, so MFU means something (see config/shakespeare_bio.py)

# the model: 4 blocks x 4 heads, 128 wide, 128 characters of context (no dropout, no biases: the defaults)
n_layer = 4
n_head = 4
n_embd = 128
block_size = 128
# the three switches of the README's study (compare_bio.py --ablate flips each in turn)
use_bio_mlp = True
use_rmsnorm = True
use_rope = True

# 400 iterations of 8 x 128 characters: 409,600 characters, a tenth of an epoch of the 4.55M training characters
batch_size = 8
gradient_accumulation_steps = 1
max_iters = 400
eval_interval = 100  # 5 evals over the run
eval_iters = 20
log_interval = 20

learning_rate = 2e-3  # small models take a high rate
min_lr = 2e-4
warmup_iters = 40
lr_decay_iters = 400
betas = (0.9, 0.99)  # seed: the default, 1337
