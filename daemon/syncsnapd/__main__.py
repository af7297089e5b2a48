import sys

from .service._cli import main

sys.exit(main())
