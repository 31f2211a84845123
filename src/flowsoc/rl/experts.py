"""`python -m flowsoc.rl.experts`: train a locomotion expert by SAC (the command line of
[`flowsoc.rl.ogbench.train_expert`][]); `--help` lists the flags."""

if __name__ == "__main__":
    import tyro

    from .ogbench._experts import ExpertArgs, main

    main(tyro.cli(ExpertArgs, prog="python -m flowsoc.rl.experts"))
