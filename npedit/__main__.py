from npedit.cli import entry_point

entry_point()
