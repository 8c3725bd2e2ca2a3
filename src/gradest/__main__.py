from gradest.cli import run

run()
