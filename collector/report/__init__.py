"""Reports: the day report file (`day`), coverage counts and plot (`coverage`), and the
daily summary table and mail (`summary`).
"""
