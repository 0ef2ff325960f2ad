"""Command-line tools over run and sweep directories (compare, group selection), the
terminal metrics table and the one-line error exit of every entry point.
"""
