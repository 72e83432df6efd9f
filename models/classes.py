"""Class names of the datasets DANet's presets are trained on, in train-id order."""
from __future__ import annotations

CITYSCAPES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)

VOC = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)

# ADE20K's 150 SceneParsing categories (objectInfo150; label 0, "other", is not a class).
ADE20K = tuple(name.strip() for name in """
wall, building, sky, floor, tree, ceiling, road, bed, windowpane, grass, cabinet, sidewalk,
person, earth, door, table, mountain, plant, curtain, chair, car, water, painting, sofa,
shelf, house, sea, mirror, rug, field, armchair, seat, fence, desk, rock, wardrobe, lamp,
bathtub, railing, cushion, base, box, column, signboard, chest of drawers, counter, sand,
sink, skyscraper, fireplace, refrigerator, grandstand, path, stairs, runway, case,
pool table, pillow, screen door, stairway, river, bridge, bookcase, blind, coffee table,
toilet, flower, book, hill, bench, countertop, stove, palm, kitchen island, computer,
swivel chair, boat, bar, arcade machine, hovel, bus, towel, light, truck, tower,
chandelier, awning, streetlight, booth, television receiver, airplane, dirt track, apparel,
pole, land, bannister, escalator, ottoman, bottle, buffet, poster, stage, van, ship,
fountain, conveyer belt, canopy, washer, plaything, swimming pool, stool, barrel, basket,
waterfall, tent, bag, minibike, cradle, oven, ball, food, step, tank, trade name,
microwave, pot, animal, bicycle, lake, dishwasher, screen, blanket, sculpture, hood,
sconce, vase, traffic light, tray, ashcan, fan, pier, crt screen, plate, monitor,
bulletin board, shower, radiator, glass, clock, flag
""".split(","))

CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "cityscapes": CITYSCAPES, "voc12aug": VOC, "ade20k": ADE20K,
}


def class_names(dataset: str, num_classes: int) -> list[str]:
    """The names of ``dataset``'s classes; "class i" where the dataset or count is unknown
    (a model fine-tuned with another ``num_classes``)."""
    names = CLASS_NAMES.get(dataset, ())
    if len(names) != num_classes:
        return [f"class {i}" for i in range(num_classes)]
    return list(names)
