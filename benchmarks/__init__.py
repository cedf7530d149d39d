"""`make bench`: efird's performance figures, each beside a floor measured in the same run."""
