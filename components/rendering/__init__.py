"""Pure functions that turn values into what lands on the hosts and what the user reads.

Four concerns, one module each: `templates` (the files of `files/`), `commands` (the shell text
of the remote commands), `htpasswd` (the password file nginx reads) and `instructions` (the
steps the stack outputs show a user). Nothing here reads a clock or a random source: the same
inputs give the same bytes, so an unchanged stack re-runs no command.
"""
