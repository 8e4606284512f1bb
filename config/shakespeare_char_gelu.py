# The GELU twin of config/shakespeare_char_bio.py: the same model, data, seed, batches and
# schedule with the standard GELU MLP (RMSNorm and RoPE as there); only use_bio_mlp and out_dir differ.
#   python train_bio.py config/shakespeare_char_gelu.py
# parameters: 798,336, of them 524,288 (65.7 %) in the MLPs
# measured: 62.9 s for the 400 iterations (65.0 s wall) as there; val loss 2.039 at the end
# tokens per iteration: 1,024 = batch_size 8 x gradient_accumulation_steps 1 x block_size 128
# memory: sized for any laptop (~0.5 GB of RAM)
from config.shakespeare_char_bio import *  # noqa: F401,F403

use_bio_mlp = False

out_dir = "out-shakespeare-char-gelu"
