"""The example signals, one small file each: what `gss compute run` runs by default.

- ``images/dominant_colors@1``, ``images/dhash@1``: map plugins over content.images;
- ``images/embedding@1``, ``images/safety_score@1``: map plugins calling Triton models;
- ``pins/save_count_1h@1``: a windowed group-by over content.pins (final hourly counts);
- ``pins/save_count_last_hour@1``: a sliding window fired early: the trailing hour's count,
  readable within a second of each save;
- ``images/near_duplicate_of@1``: a join (a Match on dhash bands) over the images changelog.
"""
