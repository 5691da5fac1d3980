"""The `pipeline` command (`cli`): each command's options generated from its dataclass
(`options`, `command_options`), and the orchestration that joins the stages (training, export and
its checks, eval, predict, the loss study in `study/`). Nothing imports pipeline."""
