"""Quickstart: train a small CNN on DynaMS selections served by a running selector.

    dynams dataset convert --out data/fashion-mnist
    dynams serve --address 127.0.0.1:50051 &
    python examples/quickstart.py 127.0.0.1:50051 "$PWD/data/fashion-mnist/train"

Under ``torchrun`` (after ``init_process_group`` and wrapping the model in DDP) the same
sampler gives every rank its part of each epoch.
"""

import argparse

import torch
from torch.utils.data import DataLoader

from dynams_service import JobSpec, ProxySpec, SelectionPolicy, ShardDataset, SlimCNN, read_manifest
from dynams_service.client import DynaMSSampler, JointPSP, SelectorClient, SelectorJob, psp_loss

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("selector", help="HOST:PORT of `dynams serve`")
parser.add_argument("shards", help="dataset URI, readable by the selector too")
parser.add_argument("--epochs", type=int, default=4)
parser.add_argument("--job-id", default="quickstart")
args = parser.parse_args()

# The trainer reads the same shards as the scorers: same order, same normalisation.
train_set = ShardDataset(args.shards)
spec = JobSpec(job_id=args.job_id, dataset_uri=args.shards, epochs=args.epochs,
               fingerprint=read_manifest(args.shards).fingerprint,
               proxy=ProxySpec(architecture="fmnist-cnn", width=0.25),
               policy=SelectionPolicy(ratio=0.3))  # 30 % of the data per epoch after warm-up

# The model trains jointly with its width-0.25 slice (the PSP) that scores the data.
model = SlimCNN(num_classes=10, in_channels=1, widths=(1.0, 0.25))
joint = JointPSP(model, width=0.25)
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

job = SelectorJob.create(SelectorClient(args.selector), spec)  # idempotent
with DynaMSSampler(train_set, job) as sampler:
    loader = DataLoader(train_set, batch_size=128, sampler=sampler)
    for epoch in range(spec.epochs):
        sampler.set_epoch(epoch)
        for step, (x, y) in enumerate(loader):
            loss = psp_loss(*joint(x), y)  # CE(model) + CE(PSP)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            # Sends the PSP weights when the next round needs them (in the background).
            sampler.maybe_push(model, progress=(step + 1) / len(loader))
        print(f"epoch {epoch}: {len(sampler)} samples ({sampler.sources[epoch].kind}), "
              f"loss {loss.item():.3f}", flush=True)
    print(f"fallback epochs: {sampler.fallback_epochs}")
