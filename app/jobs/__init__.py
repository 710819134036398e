"""The scheduled jobs: what each does, the lock a run holds, and when Beat starts them."""
