import sys

from nocollapse.cli import main

sys.exit(main())
