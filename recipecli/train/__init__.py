"""Training a recipe: data, model, the TRL SFTTrainer run, the run folder, merge and generate.

    datafiles (raw records) -> data (checked examples, TRL columns; mistral: mistral-common's
    encoding and answer masks) -> model (tokenizer,
    4/8-bit base, LoRA targets, dtypes enforced) -> runner (the run, top to bottom; preflight:
    fits the GPU or the CPU; claim: the run folder's lock and refusals; trainer: atomic
    checkpoints and the stop on NaN; checkpoints: which are whole; failures: OOM, full disk;
    callbacks, tracking) -> runfolder + lossplot (what a run leaves behind); hub (the result
    pushed to output.hub_model_id)
    -> after (merge, generate); tiny (the demo model)
    memtrace + probe (+ kernels: the GPU's kernels stood in on the CPU) -> measure: one training
    step traced, allocation by allocation, on real tensors or at full size under FakeTensorMode
    (`recipe probe`); gpuprobe: the same steps measured on a GPU
    launch: a distributed run handed to accelerate; data + datastats: what will be trained

Owns: everything that touches torch, transformers, peft, trl, bitsandbytes, datasets, wandb,
huggingface_hub's uploads and mistral_common.
Those are imported inside functions only, so importing this package stays cheap.
May import: every other stage (read, fit, and report's formatting of a verdict) and the standard
library.
"""
