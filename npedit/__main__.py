import sys

from npedit.cli import main

sys.exit(main())
