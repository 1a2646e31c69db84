"""Entry points: ``python -m transport serve ...`` (a standalone cloud, see serve.py) and
``python -m transport --ready-fd N`` (the cloud process CloudProcess spawns, see cloud.py).

A separate module so that running it does not import transport.cloud_server twice (once via the
package, once as __main__).
"""
import sys

if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        from transport.serve import main as serve_main

        sys.exit(serve_main(sys.argv[2:]))
    from transport.cloud_server import main

    sys.exit(main())
