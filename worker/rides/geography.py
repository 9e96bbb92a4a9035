"""Chicago's 77 community areas: names and approximate centroids.

The ride generator needs a distance between any two areas, including areas
that the calibration sample never saw, so the table covers all 77. The
centroids are checked against the sample's own area centroids by a test.
"""

from __future__ import annotations

import numpy as np

# (number, name, latitude, longitude)
COMMUNITY_AREAS: tuple[tuple[int, str, float, float], ...] = (
    (1, "Rogers Park", 42.0096, -87.6700),
    (2, "West Ridge", 41.9998, -87.6927),
    (3, "Uptown", 41.9665, -87.6534),
    (4, "Lincoln Square", 41.9699, -87.6893),
    (5, "North Center", 41.9482, -87.6803),
    (6, "Lake View", 41.9434, -87.6536),
    (7, "Lincoln Park", 41.9213, -87.6487),
    (8, "Near North Side", 41.9005, -87.6337),
    (9, "Edison Park", 42.0073, -87.8137),
    (10, "Norwood Park", 41.9853, -87.8063),
    (11, "Jefferson Park", 41.9705, -87.7636),
    (12, "Forest Glen", 41.9823, -87.7520),
    (13, "North Park", 41.9808, -87.7213),
    (14, "Albany Park", 41.9683, -87.7222),
    (15, "Portage Park", 41.9556, -87.7650),
    (16, "Irving Park", 41.9527, -87.7280),
    (17, "Dunning", 41.9460, -87.8081),
    (18, "Montclare", 41.9272, -87.8002),
    (19, "Belmont Cragin", 41.9287, -87.7648),
    (20, "Hermosa", 41.9233, -87.7345),
    (21, "Avondale", 41.9387, -87.7113),
    (22, "Logan Square", 41.9228, -87.7000),
    (23, "Humboldt Park", 41.9013, -87.7205),
    (24, "West Town", 41.8990, -87.6779),
    (25, "Austin", 41.8929, -87.7657),
    (26, "West Garfield Park", 41.8803, -87.7290),
    (27, "East Garfield Park", 41.8810, -87.7030),
    (28, "Near West Side", 41.8744, -87.6668),
    (29, "North Lawndale", 41.8609, -87.7185),
    (30, "South Lawndale", 41.8437, -87.7128),
    (31, "Lower West Side", 41.8528, -87.6660),
    (32, "Loop", 41.8784, -87.6288),
    (33, "Near South Side", 41.8576, -87.6220),
    (34, "Armour Square", 41.8400, -87.6330),
    (35, "Douglas", 41.8350, -87.6180),
    (36, "Oakland", 41.8237, -87.6030),
    (37, "Fuller Park", 41.8094, -87.6323),
    (38, "Grand Boulevard", 41.8127, -87.6176),
    (39, "Kenwood", 41.8090, -87.5960),
    (40, "Washington Park", 41.7929, -87.6180),
    (41, "Hyde Park", 41.7943, -87.5930),
    (42, "Woodlawn", 41.7785, -87.5960),
    (43, "South Shore", 41.7630, -87.5770),
    (44, "Chatham", 41.7410, -87.6130),
    (45, "Avalon Park", 41.7450, -87.5860),
    (46, "South Chicago", 41.7397, -87.5470),
    (47, "Burnside", 41.7290, -87.5970),
    (48, "Calumet Heights", 41.7290, -87.5760),
    (49, "Roseland", 41.7090, -87.6230),
    (50, "Pullman", 41.6980, -87.6070),
    (51, "South Deering", 41.6930, -87.5610),
    (52, "East Side", 41.7080, -87.5330),
    (53, "West Pullman", 41.6770, -87.6370),
    (54, "Riverdale", 41.6580, -87.6060),
    (55, "Hegewisch", 41.6610, -87.5460),
    (56, "Garfield Ridge", 41.7970, -87.7690),
    (57, "Archer Heights", 41.8100, -87.7260),
    (58, "Brighton Park", 41.8190, -87.6990),
    (59, "McKinley Park", 41.8310, -87.6740),
    (60, "Bridgeport", 41.8380, -87.6480),
    (61, "New City", 41.8090, -87.6650),
    (62, "West Elsdon", 41.7940, -87.7240),
    (63, "Gage Park", 41.7950, -87.6970),
    (64, "Clearing", 41.7800, -87.7700),
    (65, "West Lawn", 41.7720, -87.7220),
    (66, "Chicago Lawn", 41.7750, -87.6940),
    (67, "West Englewood", 41.7780, -87.6660),
    (68, "Englewood", 41.7790, -87.6440),
    (69, "Greater Grand Crossing", 41.7630, -87.6150),
    (70, "Ashburn", 41.7470, -87.7060),
    (71, "Auburn Gresham", 41.7440, -87.6560),
    (72, "Beverly", 41.7150, -87.6730),
    (73, "Washington Heights", 41.7170, -87.6460),
    (74, "Mount Greenwood", 41.6970, -87.7070),
    (75, "Morgan Park", 41.6900, -87.6670),
    (76, "O'Hare", 41.9786, -87.9048),
    (77, "Edgewater", 41.9866, -87.6636),
)

N_AREAS = len(COMMUNITY_AREAS)
AREA_IDS = np.array([a[0] for a in COMMUNITY_AREAS], dtype=np.int64)
AREA_NAMES = {a[0]: a[1] for a in COMMUNITY_AREAS}
LATITUDE = np.array([a[2] for a in COMMUNITY_AREAS])
LONGITUDE = np.array([a[3] for a in COMMUNITY_AREAS])
AIRPORT_AREAS = (76, 56)  # O'Hare; Garfield Ridge holds Midway

EARTH_RADIUS_MILES = 3958.8


def haversine_miles(lat1: np.ndarray, lon1: np.ndarray, lat2: np.ndarray, lon2: np.ndarray) -> np.ndarray:
    lat1, lon1, lat2, lon2 = (np.radians(x) for x in (lat1, lon1, lat2, lon2))
    a = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_MILES * np.arcsin(np.sqrt(a))


def centroid_distance_miles(pickup: np.ndarray, dropoff: np.ndarray) -> np.ndarray:
    """Straight-line miles between the centroids of two arrays of area ids (1..77)."""
    p = np.asarray(pickup, dtype=np.int64) - 1
    d = np.asarray(dropoff, dtype=np.int64) - 1
    return haversine_miles(LATITUDE[p], LONGITUDE[p], LATITUDE[d], LONGITUDE[d])


# All pairwise centroid distances, indexed [pickup - 1, dropoff - 1].
DISTANCE_MATRIX = haversine_miles(LATITUDE[:, None], LONGITUDE[:, None], LATITUDE[None, :], LONGITUDE[None, :])
