import sys

from device.classify import main

sys.exit(main())
