"""Experiments beside the champion: A/B routing of users to model aliases and shadow scoring."""
