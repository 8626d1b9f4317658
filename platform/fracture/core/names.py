"""Names two stages share: the columns of a manifest row and of a batch, and the augmentation strengths.

The data pipeline writes these columns and the model's loops read them, so they live here rather
than in either stage.
"""

IMAGE = "image"  # uint8 (S, S, 3) in a Dataset row, (B, S, S, 3) in a batch
LABEL = "label"  # 1 fractured, 0 not
ID = "image_id"
PATH = "path"
REASON = "reason"  # why a row could not be scored ("" when it was)
ROW = "row"  # a train/val row's position in its decoded cache: seeds its augmentation
SPLITS = ("train", "val", "test")  # a manifest row's split: train and val reach trials, test only evaluation
AUGMENTS = ("seed", "light", "none")  # data.augment: the notebook's, flips + small shifts, none
