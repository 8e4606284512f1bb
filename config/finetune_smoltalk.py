# Chat fine-tuning (SFT) of a pretrained WiggleGPT 124M on SmolTalk, for an 8 GB GPU.
# The data folder holds train_mask.bin / val_mask.bin, so the loss counts only the
# assistant's replies (train_bio.py turns every other target into -1).
#   python prepare_smoltalk.py   # builds data/smoltalk with the masks
#   python train_bio.py config/finetune_smoltalk.py
# From the published pretrained model instead of your own run: download ckpt_pretrain.pt and
#   python train_bio.py config/finetune_smoltalk.py --init_from=path/to/ckpt_pretrain.pt
# (the original checkpoint format loads as is, with legacy_rope on). The architecture comes
# from the checkpoint; a fresh optimizer starts at iteration 0.
# tokens per iteration: 32,768 = batch_size 1 x gradient_accumulation_steps 64 x block_size 512
# memory: ~4 GB of the 8 GB (fp16 with loss scaling, gradient checkpointing on)

init_from = "out-bio-124m/ckpt.pt"
out_dir = "out-bio-124m-sft"
dataset = "smoltalk"
eval_interval = 500
eval_iters = 100
log_interval = 10
always_save_checkpoint = True  # ckpt_best.pt keeps the best val loss in any case

block_size = 512
batch_size = 1
gradient_accumulation_steps = 64
gradient_checkpointing = True
dropout = 0.0

max_iters = 10000
learning_rate = 2e-5  # a gentle rate: keep what pretraining learned
min_lr = 2e-6  # cosine decay (the default schedule), gradients clipped at 1.0
warmup_iters = 200
lr_decay_iters = 10000
weight_decay = 0.01
betas = (0.9, 0.99)

device = "auto"
dtype = "float16"  # fp16 everywhere the original was trained (RTX 3070); bf16 also works on Ampere
compile = "auto"  # compiled on CUDA where Triton works, eager elsewhere

wandb_log = False
wandb_project = "wigglegpt"
wandb_run_name = "bio-124m-sft"
