"""Where rides come from and what a valid one is: Chicago geography, the meter, the calibrated generator, real exports and user-given rides."""
