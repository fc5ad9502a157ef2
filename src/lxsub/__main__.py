from lxsub.cli.main import run

run()
