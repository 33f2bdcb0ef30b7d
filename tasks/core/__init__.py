"""The commands behind the entry scripts (``tasks/*.py``): training and evaluation (``runner.py``),
export with int8 calibration (``deploy.py``), the dataset picture (``show.py``), the run table
(``compare.py``), and what they share: the launch environment, recipes and the config resolvers."""
