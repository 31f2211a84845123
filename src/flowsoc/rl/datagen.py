"""`python -m flowsoc.rl.datagen`: generate OGBench datasets on this machine (the command line of
[`flowsoc.rl.ogbench.generate`][]); `--help` lists the flags."""

if __name__ == "__main__":
    import sys

    from .ogbench._datagen import main

    sys.exit(main())
