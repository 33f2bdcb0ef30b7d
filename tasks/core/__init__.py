"""Builds and runs a job from a composed config: the runner, the launch environment, recipes and the
config resolvers."""
