"""The text of ``%lepton?``: what every command and flag does, with examples."""

from ._models import HELP as _MODELS_HELP

DOC = """Run a cell on the Ray cluster, or manage the cluster and its jobs.

The first `%%lepton` cell connects to the cluster: the embedded local Ray (shared by every
kernel on this machine; it starts in the background as soon as the extension loads, so it is
usually up by the time you run a cell; LEPTON_AUTOSTART=0 turns that off), or the cluster
named by RAY_ADDRESS or by `%lepton connect` (then nothing embedded starts). The names the cell reads are sent from the kernel; the names it assigns
come back (tensors and modules on the CPU). Output streams into the cell as it is printed.
Ctrl-C (or the stop button) cancels the remote work and frees its resources.
Each cell starts from a fresh namespace on the cluster. Cells that follow each other keep one
worker of the kernel warm for LEPTON_WARM_CELL_S seconds (default 20; 0 turns it off), so they
skip Ray's worker lease; it holds that cell's CPUs meanwhile, any other work of the kernel gets
them first, GPU cells never keep one, and `%lepton status` shows it.

Examples
--------
Run a cell on one CPU of the cluster::

    In [1]: %%lepton
       ...: import socket
       ...: host = socket.gethostname()
       ...: print("ran on", host)
    ran on head-node

    In [2]: host            # assigned on the cluster, now in the kernel
    Out[2]: 'head-node'

Ask for a GPU, more memory, and a time limit::

    %%lepton --gpus 1 --memory 8GiB --timeout 600
    model = model.cuda(); loss = train(model)      # model comes back on the CPU

SPMD on a warm group of ranks (torch.distributed is ready; state stays between cells)::

    %%lepton --workers 2
    import torch.distributed as dist
    print("rank", dist.get_rank(), "of", dist.get_world_size())

Train with Ray Train (DDP, restarts from checkpoints, live curves; `%%lepton train -h`)::

    %%lepton train --workers 2 --max-failures 1
    from lepton_lab.training import epochs, prepare_loader, prepare_model, report
    model = prepare_model(Net()); loader = prepare_loader((X, Y), batch_size=64)
    opt = torch.optim.Adam(model.parameters())
    for epoch in epochs(10, model=model, optimizer=opt):
        for x, y in loader:
            opt.zero_grad(); loss = F.cross_entropy(model(x), y); loss.backward(); opt.step()
            report(loss=loss.item())

    %%lepton train --workers 4 --detach --name nightly   # runs on; `%lepton attach nightly`

A model too big for one device: shard parameters, gradients and optimizer state (FSDP2);
checkpoints are sharded and resume on any number of ranks; `model` comes back whole::

    %%lepton train --workers 4 --gpus-per-worker 1 --strategy fsdp
    model = prepare_model(GPT(...), shard_modules=list(gpt.blocks))   # one unit per block

Elastic, across nodes: start with what is free (2 to 4 ranks), go on after a lost node::

    %%lepton train --workers 2-4 --max-failures 3

Differential privacy (Opacus DP-SGD): add --dp-epsilon and one line before the loop (without
the flag make_private returns its inputs, so the same cell runs either way); each epoch
reports dp_epsilon, the budget spent so far::

    %%lepton train --workers 2 --dp-epsilon 3
    ...
    model, opt, loader = lepton.training.make_private(model, opt, loader, epochs=10)
    for epoch in epochs(10, model=model, optimizer=opt):
        ...

Search hyperparameters with Ray Tune (`%%lepton tune -h`)::

    %%lepton tune --samples 8 --scheduler asha --metric acc --mode max
    search_space = {"lr": tune.loguniform(1e-4, 1e-1)}
    ...  # the cell reads config["lr"] and calls report(acc=...)

Outlive the kernel, then come back::

    %%lepton --detach --name nightly
    result = long_job()

    %lepton attach nightly      # replays the output, pulls `result`

In a pipeline (`lepton run`, papermill), keep an expensive cell's result between runs: a
re-run after fixing a later cell gets the stored result when this cell's source and the
values it reads are unchanged (nothing is sent to the cluster)::

    %%lepton --cache --gpus 1
    model, history = train(X, y, epochs=epochs)

Record metrics for the pipeline run (`lepton runs`, `lepton compare`, the dashboards)::

    import lepton_lab
    lepton_lab.record("accuracy", acc)              # also works inside %%lepton cells
    lepton_lab.record("loss", loss, step=epoch)     # a curve

Line commands (`%lepton COMMAND`)
---------------------------------
  status                  nodes, CPUs, GPUs, memory, running jobs, dashboard link
  connect ADDRESS         use an existing cluster: host:port or ray://host:10001;
                          `connect local` goes back to the embedded cluster; a TLS
                          cluster needs RAY_USE_TLS and its files in the kernel's
                          environment (`lepton tls env` prints them; `lepton up --tls`)
  disconnect              drop the connection (the cluster keeps running)
  jobs [--all] [--limit N] [--status S]   recorded jobs, newest first
  attach JOB              follow a detached job to its end and pull its variables
  logs JOB                a job's text output
  cancel JOB              cancel a running job and free its resources
  group [info|stop|restart|resize N]   the kernel's warm group of ranks (--workers):
                          show it, stop it, restart it (after a dead rank), resize it
  runs [RUN] [--limit N]  training and tuning runs: metrics, best/last checkpoints
  audit [--limit N] [--job JOB]   the audit log of submissions
{models}
  stop-cluster            stop the embedded local cluster (all kernels lose it)
""".replace("{models}\n", _MODELS_HELP)
