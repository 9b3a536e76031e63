"""VisA, in the MVTec-like tree made from its "1cls" split (images .JPG/.png, masks .png)::

    <root>/<class>/train/good/*.JPG
    <root>/<class>/test/{good,bad}/*.JPG
    <root>/<class>/ground_truth/bad/<stem>.png

That tree is the MVTec AD layout, so the MVTec reader lists it unchanged.
"""

from unimmad_cl.data.readers.mvtec import DEFAULT_MODALITIES, classes, samples

__all__ = ["DEFAULT_MODALITIES", "classes", "samples"]
