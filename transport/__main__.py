"""Entry point of the cloud process: ``python -m transport --ready-fd N`` (see cloud.py).

A separate module so that running it does not import transport.cloud twice (once via the
package, once as __main__).
"""
import sys

from transport.cloud import main

if __name__ == "__main__":
    sys.exit(main())
