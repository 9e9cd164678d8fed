"""`python -m bench`: run every benchmark, print the figures, write bench/results.json."""

from bench import reactive

if __name__ == "__main__":
    reactive.main()
