"""``python -m app.client tail|watch|set|get|delete|list``: the terminal tools on their own.

They load the client and nothing of the server, where ``flask --app wsgi events …`` (the same
commands) builds the whole app first.
"""
from .cli import events_cli

if __name__ == "__main__":
    events_cli.main(prog_name="python -m app.client")
