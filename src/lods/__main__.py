from lods.cli import app

app(prog_name="lods")
