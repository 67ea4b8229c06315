"""The ``fastseg`` command (also ``python -m fastseg``)."""
import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fastseg", description="Fast detection and segmentation ops for PyTorch")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="print what is built and available: extension, kernels, Triton, GPU")
    bench = sub.add_parser("bench", help="run the benchmark suite and print the table of speed-ups")
    from fastseg.bench import add_arguments

    add_arguments(bench)
    from fastseg.engine.commands import add_subcommands

    add_subcommands(sub)
    args = parser.parse_args(argv)
    if args.command == "info":
        from fastseg.info import format_info

        print(format_info())
        return 0
    if args.command == "bench":
        from fastseg.bench import run

        return run(args)
    if hasattr(args, "func"):
        return args.func(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
