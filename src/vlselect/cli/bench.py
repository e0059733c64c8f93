"""``vlselect bench``: the whole loop on the world, with a results table and an HTML report."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("bench")
    def bench(
        out: Path = typer.Option(Path("bench-out"), "--out", help="Output folder (cache/, results.json/.csv, report.html)."),
        quick: bool = typer.Option(False, "--quick", help="The quick form (a 4,000-record world, 100 samples per evaluation set, budgets 10% and 20%, 1 seed, one world; about 4 minutes on 2 cores, the same as `vlselect demo`)."),
        methods: str = typer.Option("", "--methods", help="Comma list of methods, or all (default: random, "
                                    "coincide, icons, tive, less, less_coincide and less_tive; all adds "
                                    "random_stratified, length, el2n, perplexity, semdedup, d2pruning, the composites "
                                    "coincide_icons, icons_coincide, less_support and less_tive_support)."),
        budgets: str = typer.Option("", "--budgets", help="Comma list of fractions (default 0.05,0.1,0.2; quick 0.1,0.2)."),
        seeds: str = typer.Option("", "--seeds", help="Comma list of training seeds (default 0,1,2; quick 0)."),
        seed_budgets: str = typer.Option("", "--seed-budgets", help="Comma list of the budgets trained with every "
                                         "seed (default 0.1,0.2, where the targets are judged on the mean over "
                                         "seeds; the first seed alone elsewhere), e.g. 0.05,0.1,0.2."),
        size: Optional[int] = typer.Option(None, "--size", help="World size (default 20000; quick 4000)."),
        jobs: int = typer.Option(2, "--jobs", help="Training/evaluation workers side by side (one thread each)."),
        worlds: str = typer.Option("", "--worlds", help="Comma list of world seeds (default 0,1; quick 0). Each "
                                   "world is a whole bench in OUT/world-<seed>/ (its own pool, evaluation and "
                                   "validation questions, warm-up and selection seed); OUT/results.json is their "
                                   "mean, on which the targets are judged. One world writes straight into OUT."),
        seed: Optional[int] = typer.Option(None, "--seed", help="One world: the seed of the world, the model and "
                                           "the selections (the same as --worlds SEED)."),
        d2_score: str = typer.Option("margin", "--d2-score", help="D2-Pruning's score: margin (one-checkpoint "
                                     "probability margin, as COINCIDE's score_aum.py) or aum (area under the margin "
                                     "while fine-tuning on the whole pool: one more training run)."),
        base: str = typer.Option("foundation", "--base", help="The model every run fine-tunes: foundation (the "
                                 "world's pretrained foundation, shipped), captions (the earlier recipe: a random "
                                 "tiny model pre-trained on captions, vision tower trained) or a model directory."),
        adapter: str = typer.Option("lora", "--adapter", help="Fine-tuning: lora (LoRA on the language model, "
                                    "projector in full, vision tower frozen) or full."),
        batch_size: int = typer.Option(8, "--batch-size", min=1, help="Fine-tuning batch size (8: the foundation "
                                       "leaves some answer formats to the fine-tune, and a subset needs the optimizer "
                                       "steps to learn them; LLaVA-1.5's recipe scaled would be 32)."),
        lr: float = typer.Option(3e-4, "--lr", help="Fine-tuning learning rate (LoRA and projector; the warm-up "
                                 "model of TIVE, ICONS and LESS too; 3e-4 for the shipped foundation, 1e-3 made "
                                 "it unlearn counting by colour)."),
        lora_r: int = typer.Option(16, "--lora-r", min=1, help="LoRA rank of the fine-tune (alpha 2 r)."),
        lora_targets: Optional[str] = typer.Option(None, "--lora-targets", help="The language model's layers LoRA "
                                                   "adapts in the fine-tune, comma-separated (default: every linear "
                                                   "layer, LLaVA's find_all_linear_names), e.g. "
                                                   "gate_proj,up_proj,down_proj."),
        projector_lr: float = typer.Option(2e-5, "--projector-lr", help="The projector's own fine-tuning rate "
                                           "(LLaVA-1.5's LoRA script's mm_projector_lr; give the --lr value to train "
                                           "it at LoRA's rate, as the bench did before 2026-12-06)."),
        length_group: int = typer.Option(4, "--length-group", help="Training steps grouped by token count over "
                                         "this many steps (less padding); 0: LLaVA's plain shuffle."),
        val_targets: str = typer.Option("counted", "--val-targets", help="The validation sets ICONS, LESS and the "
                                        "composites target: counted (the sets the table counts, known once the "
                                        "full pool is trained) or all (every evaluation set, learned or not)."),
        clean_reference: bool = typer.Option(False, "--clean-reference", help="Add one run on the pool without "
                                             "its wrong answers (the world's metadata: an oracle that measures the "
                                             "effect of the noise, beside the full pool; one full-pool run a world)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Recompute every stage instead of reusing the "
                                       "cache (a stage is reused only when its recipe and the code version match)."),
    ) -> None:
        """Run the selection methods on the synthetic world (two worlds by default), train on each subset,
        evaluate, and write the table and report.

        Stages are cached under OUT/world-<seed>/cache (one world: OUT/cache) by a hash of their inputs: a second
        run with a new method only pays for that method.

        Example: vlselect bench --quick --out bench-out
        """
        from rich.console import Console

        import vlselect.bench as vb
        import vlselect.bench.report_console as rc
        from vlselect.bench import BenchConfig
        from vlselect.bench.worlds import DEFAULT_WORLDS
        from vlselect.errors import ConfigError

        if d2_score not in ("margin", "aum"):
            raise ConfigError(f"--d2-score {d2_score!r}: choose margin or aum")
        if adapter not in ("lora", "full"):
            raise ConfigError(f"--adapter {adapter!r}: choose lora or full")
        if val_targets not in ("counted", "all"):
            raise ConfigError(f"--val-targets {val_targets!r}: choose counted or all")
        if not lr > 0:
            raise ConfigError(f"--lr {lr}: give a positive learning rate, e.g. --lr 1e-3")
        if not projector_lr > 0:
            raise ConfigError(f"--projector-lr {projector_lr}: give a positive learning rate, e.g. --projector-lr 2e-5")
        if length_group < 0:
            raise ConfigError(f"--length-group {length_group}: 0 (off) or a number of steps")
        if seed is not None and worlds:
            raise ConfigError(f"--seed {seed} and --worlds {worlds}: give one (--seed S is --worlds S)")
        try:
            world_seeds = ([seed] if seed is not None else
                           [int(w) for w in worlds.split(",") if w.strip()] if worlds else
                           [0] if quick else list(DEFAULT_WORLDS))
        except ValueError:
            raise ConfigError(f"--worlds {worlds!r}: give world seeds as integers, e.g. --worlds 0,1") from None
        if not world_seeds or len(set(world_seeds)) != len(world_seeds):
            raise ConfigError(f"--worlds {worlds!r}: give one or more different world seeds, e.g. --worlds 0,1")
        over: dict = {"jobs": jobs, "seed": world_seeds[0], "d2_score": d2_score, "base": base, "adapter": adapter,
                      "length_group": length_group, "batch_size": batch_size, "val_targets": val_targets, "lr": lr,
                      "projector_lr": projector_lr, "lora_r": lora_r,
                      "clean_reference": clean_reference}
        if lora_targets is not None:
            from vlselect.train.lora import language_model_targets

            if adapter != "lora":
                raise ConfigError(f"--lora-targets {lora_targets} with --adapter {adapter}: LoRA's layers apply to "
                                  "--adapter lora only (full fine-tunes every layer)")

            over["lora_targets"] = tuple(t.strip() for t in lora_targets.split(",") if t.strip())
            language_model_targets(over["lora_targets"])  # a wrong name is refused here, before any work
        if base == "captions":  # the earlier recipe: the random vision tower is trained in every run
            over["modules_to_save"] = ("vision_tower",)
        if methods.strip() == "all":
            over["methods"] = vb.ALL_METHODS
        elif methods:
            over["methods"] = tuple(m.strip() for m in methods.split(",") if m.strip())
        if budgets:
            over["budgets"] = tuple(float(b) for b in budgets.split(",") if b.strip())
        if seeds:
            over["seeds"] = tuple(int(s) for s in seeds.split(",") if s.strip())
        if seed_budgets:
            try:
                over["seed_budgets"] = tuple(float(b) for b in seed_budgets.split(",") if b.strip())
            except ValueError:
                raise ConfigError(f"--seed-budgets {seed_budgets!r}: give fractions, e.g. "
                                  "--seed-budgets 0.1,0.2") from None
            run_budgets = over.get("budgets") or (BenchConfig.quick() if quick else BenchConfig()).budgets
            stray = [b for b in over["seed_budgets"] if b not in run_budgets]
            if stray:
                raise ConfigError(f"--seed-budgets {seed_budgets}: {', '.join(f'{b:g}' for b in stray)} is not among "
                                  f"the budgets run ({', '.join(f'{b:g}' for b in run_budgets)}); give budgets from "
                                  "--budgets")
        if size:
            over["size"] = size
        cfg = BenchConfig.quick(**over) if quick else BenchConfig(**over)
        if len(world_seeds) == 1:
            results = vb.run_bench(out, cfg, overwrite=overwrite)
            rc.print_results(results, Console())
        else:
            results = vb.run_worlds(out, cfg, world_seeds, overwrite=overwrite)
            rc.print_worlds(results, Console())
        Console().print(f"\nreport: {out / 'report.html'}  ·  table: {out / 'results.csv'}")
