from pipeline import exits

exits.install_handlers()  # before the imports below: a signal while they load exits 3 too

from pipeline.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
