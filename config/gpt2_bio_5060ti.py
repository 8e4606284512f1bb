# WiggleGPT 124M (123,697,920 parameters) on OpenWebText, sized for a 16 GB GPU (RTX 5060 Ti).
#   python train_bio.py config/gpt2_bio_5060ti.py
# tokens per iteration: 32,768 = batch_size 4 x gradient_accumulation_steps 8 x block_size 1,024
# (the same as the 3070 config, so runs on either card are the same run)
# memory: ~10 GB of the 16 GB at bf16. RTX 50-series cards need a CUDA 12.8+ build of torch.
# Everything not set here comes from config/gpt2_bio_3070.py.
from config.gpt2_bio_3070 import *  # noqa: F401,F403  (the published recipe)

out_dir = "out-bio-124m-5060ti"
batch_size = 4
gradient_accumulation_steps = 8
wandb_run_name = "bio-124m-5060ti"
