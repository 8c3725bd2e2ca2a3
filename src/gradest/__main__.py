from gradest.cli import run

# guarded: Dask's worker processes (gradest sweep --workers N) re-import the main module on start
if __name__ == "__main__":
    run()
