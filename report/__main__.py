"""`python -m report --results results [--out DIR]`: write REPORT.md, report.csv and the report's figures."""
from report.writer import main

if __name__ == "__main__":
    main()
